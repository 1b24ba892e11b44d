"""emlib: the library behind the executable companion to *Convergent Linear
Representations of Emergent Misalignment* (Soligo, Turner, Rajamanoharan, Nanda, 2025).

One module per pipeline stage: ``config`` (params and their checks), ``models``, ``sources``
(where a model or a brought fine-tune comes from, read without torch), ``organisms`` (trained and
brought organism entries), ``data``, ``generate``, ``train``, ``judge`` (the interface; ``llm_judges``, and ``offline_judge``
with ``judge_features``, ``labels`` and ``judge_check`` for the validated proxy),
``metrics``, ``activations``, ``directions``, ``interventions``, ``probes``, ``plotting``,
``cache``, and ``paper`` (the paper's figures, written once). ``emlib.book`` is the
chapters' glue, one module per chapter.
"""

__version__ = "0.1.0"
