"""Sample augmentation: the job an AugmentationRun's pods run (``python -m sampleforge.jobs.augment``).

Modules, in the order a shard uses them:

* :mod:`.entrypoint` -- ``main(env) -> exit status``, configured only by the environment;
* :mod:`.pipeline` -- one shard from plan to commit (:class:`~.pipeline.ShardJob`), each batch of its pass
  processed by :mod:`.shardbatch`;
* :mod:`.source` -- listing and streaming JSONL, CSV and Parquet from MinIO; row ids and sharding;
* :mod:`.preprocess`, :mod:`.pii` -- cleaning, dense-feature statistics, PII redaction;
* :mod:`.knowledge` -- the first pass: whole-source facts every shard learns identically, one reducer
  per fact (:mod:`.reducers`);
* :mod:`.rows`, :mod:`.labels`, :mod:`.randomness` -- cleaned rows and their column roles, the
  source's label type, and each augmenter's per-row random numbers;
* :mod:`.protocol` -- the **row-augmenter protocol** every augmenter follows;
* :mod:`.registry`, :mod:`.catalog` -- the augmenter types this image can build, and the families
  that register them: :mod:`.textedit` (adapter for the text-edit package :mod:`.text`),
  :mod:`.attributes`, :mod:`.hardnegative` (with :mod:`.bm25`, :mod:`.embedding`), :mod:`.rebalance`,
  :mod:`.generation`, :mod:`.judge`, :mod:`.gan`, :mod:`.mixup`, :mod:`.image`;
* :mod:`.filters`, :mod:`.dedup` -- quality filters for generated rows;
* :mod:`.output`, :mod:`.commit`, :mod:`.report`, :mod:`.htmlreport` -- parts and rejects, shard markers
  and the manifest, ``report.md`` and ``report.html``.

The committed output (what :mod:`sampleforge.jobs.finetune.data` and anyone else may rely on)
----------------------------------------------------------------------------------------------

Under ``spec.output.uri``, trusted only once ``manifest.json`` exists (it is written last)::

    manifest.json                            the commit
    data/part-<shard:05d>-<seq:05d>.parquet   rows (.jsonl with output.format: jsonl)
    rejects/shard-<shard:05d>.jsonl          source records set aside: {position, source, reason, record}
    preprocess.json                          fitted dense-feature statistics (only with dense features)
    report.md                                human-readable report
    report.html                              the same with plots, one self-contained page
    _shards/<shard>.json                     per-shard commit markers (internal: resume bookkeeping)

Rows: the columns mapped in ``spec.source.columns`` under their source names (id as text, query and
item as text, label in the source's type -- int64, double or string -- attributes as text or null,
dense features as double after clipping and normalisation, image as text) followed by the provenance
columns ``sf_origin`` ('source' / 'generated'), ``sf_augmenter``, ``sf_source_row`` (global source row
id) and ``sf_label_rule`` (every rule and its meaning: ``rows.PROVENANCE_COLUMNS``, which the
manifest's ``provenanceColumns`` repeats); a run with an ``llmJudge``
(:mod:`.judge`) adds ``sf_judge_label`` (its grade, in the label's type) and ``sf_judge_agrees``.
Unmapped source columns are not carried: a
generated row could not give them a truthful value. Generated ids are ``<source id>~<augmenter>~<k>``.

``manifest.json`` keys readers use: ``files`` -- the data parts only, each ``{path, size, sha256,
rows}`` relative to the prefix, in shard order; ``format`` (parquet | jsonl); ``columns`` (the spec's
``source.columns``, camelCase); ``rowsIn``, ``rowsOut``, ``generatedRows``, ``rejectedRows``. It also
holds ``rejects`` and ``artifacts`` (other vouched-for objects with sizes and checksums), per-augmenter
counts, drops per filter and reason, label distribution before and after, the source objects with
ETags, the first pass's summary, ``preprocess`` statistics, the full spec (``config``), ``seed``,
``codeVersion``, fingerprints and per-shard timings.
"""
