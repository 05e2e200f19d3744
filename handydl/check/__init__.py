"""handydl.check: gradient checking and Jacobians."""
from .gradcheck import GradcheckError, GradcheckReport, gradcheck, jacobian  # noqa: F401
from .expr import ExprError  # noqa: F401
from .bounded import BudgetExceeded  # noqa: F401
from .verify import Verdict, verify_derivative, verify_gradient, verify_relation  # noqa: F401
