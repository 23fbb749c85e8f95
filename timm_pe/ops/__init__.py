"""Operators shared by every model: rotary embedding application."""
from .apply_rope import apply_rope

__all__ = ['apply_rope']
