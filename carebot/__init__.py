"""The shared layer. Importing it first makes a torchrun rank die with its launcher (carebot.procs)."""
from carebot.procs import die_with_launcher as _die_with_launcher

_die_with_launcher()
