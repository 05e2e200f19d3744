"""handydl.check: gradient checking and Jacobians."""
from .gradcheck import GradcheckError, GradcheckReport, gradcheck, jacobian  # noqa: F401
