"""Progress views show text from input files: it must reach the terminal inert."""

from io import StringIO

from rich.console import Console

from paav_cli.progress import TwoLevelProgress


def test_a_video_label_with_escapes_and_markup_is_shown_inert():
    out = StringIO()
    bar = TwoLevelProgress(1, "rendering", console=Console(file=out, force_terminal=True, width=120))
    bar.start_video("a cat \x1b]0;pwned\x07 [bold red]x[/] \x1b[2J", 3)
    bar.close()
    shown = out.getvalue()
    assert "pwned" not in shown and "\x1b]" not in shown and "\x1b[2J" not in shown
    assert "[bold red]x[/]" in shown  # printed as written, not applied
