"""``crossdiff report`` and ``crossdiff show``: what a reviewer reads, from every stage's output.

The last stage: it reads the analysis, the explanations, the recurrence and the steering
results through their own loaders and renders them; no other stage imports it (the graph is
report -> analysis, interpret, recurrence, steering; interpret -> analysis).

- :func:`build_report` (page.py): the auditor's page, RUN/report/index.html, one
  self-contained file; :func:`render_report` gives it as a string;
- :func:`show_feature` (show.py): one feature's evidence as terminal text
  (:func:`format_feature` for an analysis already loaded);
- :func:`interpret_html`, :func:`interpret_lines` (explanations.py): the explanations in the
  page and in ``show``; :func:`steering_html` (steering.py): a feature's steering section.

The page is offline by construction: CSS and JS are inlined from ``report/templates/``, plots
are inline SVG, nothing is fetched. Corpus text is hostile input (web pages, chats, code):
every piece of it goes through :func:`html.escape` (``html.py``) before it reaches the page,
and the page carries a Content Security Policy that allows only *this* page's own script (by
its SHA-256), so even a bug in the escaping could not run injected script. The JS only sorts
and filters rows that are already in the page; it never inserts HTML.

Layout: summary (models, layers, pairs, FVE, dead %, partitions, the exclusivity check) and a
plot (relative decoder norms for standard crosscoders, partition activity for DFC):
``summary.py``; one sortable, filterable list per model of its exclusive candidates in review
order: ``lists.py``; the explanations and the recurrence; and a detail view per listed
feature (``#f-<index>``; CSS ``:target``, so it works without JS) with its statistics, top
and quantile-band examples in both models' own renderings: ``detail.py``, and steering
results when ``RUN/steering/feature-<i>.json`` exists: ``steering.py``.
"""

from __future__ import annotations

from crossdiff.report.explanations import interpret_html, interpret_lines
from crossdiff.report.page import build_report, render_report
from crossdiff.report.show import format_feature, show_feature
from crossdiff.report.steering import steering_html

__all__ = [
    "build_report",
    "format_feature",
    "interpret_html",
    "interpret_lines",
    "render_report",
    "show_feature",
    "steering_html",
]
