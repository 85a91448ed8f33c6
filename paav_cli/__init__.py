"""paav: Prompt-A-Video as a tool. Short text-to-video prompts in, model-preferred prompts out."""

__version__ = "0.1.0"
