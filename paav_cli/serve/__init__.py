"""`paav serve`: the booster behind HTTP APIs that UIs already speak (OpenAI, Ollama), batched under load."""
