"""rnnkit: recurrent neural networks from the equations up."""
__version__ = "0.1.0"
