"""Where models come from: Hugging Face folders and Hub ids, GGUF files, LoRA adapters, the conversion cache,
and the fingerprint that binds a plan to the weights it was made from."""
