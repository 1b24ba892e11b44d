"""The book's glue: one module per chapter, each holding only that chapter's tables and order of steps
(the methods live in the stage modules: ``emlib.directions``, ``emlib.probes``, ``emlib.metrics``, ...).

- ``session``: ``open_chapter``, where every chapter starts (checked params, judge, questions, models
  loaded only on a cache miss);
- ``display``: provenance, the params table, the judge note, example answers;
- ``chat_model`` (chapter 0), ``organisms`` (1), ``direction_extraction`` (2), ``steering`` (2's second half;
  3 and 5 read its runs and control vectors), ``transfer_ablation`` (3),
  ``lora_probes`` (4), ``self_correction`` (5);
- ``results``: what the chapters record for the results page, and the page's table.
"""

from emlib.book.session import Chapter, open_chapter

__all__ = ["Chapter", "open_chapter"]
