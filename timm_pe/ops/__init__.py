"""Operators shared by every model: rotary embedding application."""
from .rope import apply_rope

__all__ = ['apply_rope']
