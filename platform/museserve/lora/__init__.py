"""LoRA adapters served on a shared base model: PEFT files, residency per replica, and the
batched delta that lets requests for different adapters share a step."""
