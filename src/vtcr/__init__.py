"""vtcr: vision-text compressed reasoning (VTC-R1).

Pipeline: render (text -> page images) -> tokens (what they cost) -> data (SFT samples)
-> train -> engine (optical-memory reasoning loop) -> evaluate.
"""

__version__ = "0.1.0"
