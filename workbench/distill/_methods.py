"""Imports every module that registers a distillation recipe (see :mod:`.recipes`)."""
from . import consistency  # noqa: F401
from . import dmd  # noqa: F401
from . import boss  # noqa: F401
from . import reflow  # noqa: F401
from . import mdt_dist  # noqa: F401
from . import multi_student  # noqa: F401
from . import ambient  # noqa: F401
from . import phased_dmd  # noqa: F401
from . import flash_dmd  # noqa: F401
from . import meanflow  # noqa: F401
from . import splitmeanflow  # noqa: F401
from . import sid  # noqa: F401
from . import tdm  # noqa: F401
