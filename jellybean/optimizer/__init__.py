"""The planner: spec in, Plan out. Pure: no Ray, no I/O.

``plan(bundle, strategy=...)`` compiles the documents into a :class:`Problem`, runs the chosen
strategy (the optimal MILP by default) and every baseline through the same pricing code, and returns
a :class:`Plan`. ``plan_jointly(bundles, ...)`` plans several workflows together on one topology
(:mod:`jellybean.optimizer.joint`) and returns a :class:`JointPlan`: one Plan per workflow and their total.
"""

from jellybean.optimizer.joint import plan_jointly
from jellybean.optimizer.plan import Assignment, BaselineResult, Cost, JointPlan, LinkFlow, Plan, SolverStats
from jellybean.optimizer.planner import STRATEGIES, plan, run_strategy
from jellybean.optimizer.problem import Problem, compile_problem

__all__ = ["Assignment", "BaselineResult", "Cost", "JointPlan", "LinkFlow", "Plan", "Problem", "STRATEGIES",
           "SolverStats", "compile_problem", "plan", "plan_jointly", "run_strategy"]
