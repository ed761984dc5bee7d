from .scheduling_ddad import DDADScheduler, DDADSchedulerOutput

__all__ = ["DDADScheduler", "DDADSchedulerOutput"]
