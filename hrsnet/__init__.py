"""hrsnet: a runnable reproducibility report for HRNet and HRSNet on CIFAR-100."""

from .models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "__version__"]
