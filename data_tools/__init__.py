"""CareBot stack."""
import carebot  # noqa: F401  (first: a torchrun rank dies with its launcher)
