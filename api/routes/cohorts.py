"""Cohorts, exports and probes over HTTP (blueprint ``bp``, mounted under /api/v1)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("cohorts", __name__)
