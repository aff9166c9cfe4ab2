"""Query and document encoders: the frozen base model plus a pool of LoRA experts."""

from app.encoder.base import BASE
from app.encoder.lora_encoder import LoraEncoder

__all__ = ["BASE", "LoraEncoder"]
