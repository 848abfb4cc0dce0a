"""Run directories and typed, versioned artifacts (JSON metadata + safetensors tensors)."""
