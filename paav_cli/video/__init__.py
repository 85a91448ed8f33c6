"""Video generation: diffusers pipelines per family, memory modes, the render cache, video files.

`render_prompts` is the one entry point stages use: it resolves settings, skips what the cache
already holds (without loading the pipeline), and renders the rest with the pipeline loaded once.
"""

from paav_cli.video.jobs import RenderJob, RenderSettings, resolve_job
from paav_cli.video.render import VideoGenerator, render_prompts

__all__ = ["RenderJob", "RenderSettings", "VideoGenerator", "render_prompts", "resolve_job"]
