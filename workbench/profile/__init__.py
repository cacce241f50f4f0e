"""Measuring a model where it runs: on this machine or on a board over ssh, and using those
measurements (``compare-report`` against an emulation estimate, ``targets calibrate``).

    from workbench.profile import profile, profile_remote, compare_reports, load_report

:mod:`workbench.profile.device_script` is the self-contained on-device profiler (it imports
nothing from workbench); :mod:`workbench.profile.run` drives it here or over ssh;
:mod:`workbench.profile.reports` reads and lines up reports; :mod:`workbench.profile.calibrate`
fits a target's cost model to measurements. This stage may import the emulate stage (target
profiles) and everything below it.
"""

from workbench.profile.reports import compare_reports, load_report
from workbench.profile.run import ProfileSettings, RemoteTarget, profile, profile_remote

__all__ = ["ProfileSettings", "RemoteTarget", "profile", "profile_remote", "compare_reports", "load_report"]
