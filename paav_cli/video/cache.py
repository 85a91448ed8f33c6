"""The content-addressed render cache: `<cache>/renders/<key>.mp4` plus a JSON sidecar.

The sidecar is written last, after the video is in place, so it marks a complete render: a kill
between the two leaves a video without a sidecar, which counts as absent and is rendered again.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from paav_cli import paths
from paav_cli.runs import atomic_write_json
from paav_cli.video.files import write_frames
from paav_cli.video.jobs import RenderSettings


class RenderCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else paths.renders_dir()

    def video_path(self, settings: RenderSettings, output: str = "video") -> Path:
        return self.root / f"{settings.key()}{'.png' if output == 'image' else '.mp4'}"

    def sidecar_path(self, settings: RenderSettings) -> Path:
        return self.root / f"{settings.key()}.json"

    def lookup(self, settings: RenderSettings, output: str = "video") -> Path | None:
        video = self.video_path(settings, output)
        return video if video.is_file() and self.sidecar_path(settings).is_file() else None

    def store(self, settings: RenderSettings, frames, *, fps: int, output: str, info: dict) -> Path:
        video = self.video_path(settings, output)
        write_frames(frames, video, fps)
        atomic_write_json(self.sidecar_path(settings), {
            "key": settings.key(), "settings": asdict(settings), "fps": fps,
            "frames_produced": int(frames.shape[0]), "height": int(frames.shape[1]), "width": int(frames.shape[2]),
            **info,
        })
        return video

    def sidecar(self, key: str) -> dict | None:
        path = self.root / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None
