"""Tools that show why: gradient checks, gradient flow through time, activations."""
from .gradcheck import GradcheckReport, gradcheck

__all__ = ["gradcheck", "GradcheckReport"]
