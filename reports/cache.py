"""Reports reused while the data they read is unchanged.

A dashboard page and its three charts, or an evaluator's script pulling the report and
then each table, would otherwise build the same report again and again (about 0.7 s for a
10,000-person programme, 9 s for a million answers: docs/benchmarks.md). A cached report
is reused only while `reports.frames.data_version` (maxima of the tables' keys, cheap to
read) is unchanged, so it is always exactly what a fresh build would give.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from sqlalchemy.orm import Session

from reports.frames import data_version
from reports.service import Report, ReportRequest, build_report

DEFAULT_SIZE = 16


class ReportCache:
    """The last `size` reports built, by request and data fingerprint; thread-safe.

    Keep one per application (not per module): two apps on two databases can hold data
    with equal fingerprints. Callers must not change a returned report.
    """

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._reports: OrderedDict[Hashable, Report] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.builds = 0

    def report(self, session: Session, request: ReportRequest) -> Report:
        """`build_report(session, request)`, or the same report built earlier on the same
        data. Raises what `build_report` raises (never cached)."""
        key = (
            request.programme,
            request.pre,
            request.post,
            tuple(sorted(request.filters.items())),
            data_version(session, request.programme),
        )
        with self._lock:
            if key in self._reports:
                self._reports.move_to_end(key)
                self.hits += 1
                return self._reports[key]
        # Built outside the lock: two requests may build the same report at once, which
        # costs time but never gives a wrong one; a lock held for seconds would serialise
        # every evaluator behind one build.
        built = build_report(session, request)
        with self._lock:
            self.builds += 1
            self._reports[key] = built
            while len(self._reports) > self.size:
                self._reports.popitem(last=False)
        return built
