"""Every kind of aggregate in saia's log.

Event classes register their explicit topics when their module is imported, and
a log can only be read by a process that has them all: ``saia-replay``, say,
reads Link and Cluster events that it has no other reason to import.
"""

from __future__ import annotations

from saia.domain.cluster import Cluster
from saia.domain.job import Job
from saia.domain.key import ApiKey
from saia.domain.link import Link
from saia.domain.request import Request
from saia.domain.service import Service

AGGREGATES = (ApiKey, Cluster, Job, Link, Request, Service)
