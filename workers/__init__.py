"""One Ray actor class per model family: generators, VLM judges, reward models (and OCR, to come).

Each class is a Ray Data UDF: constructed once per actor (loads its model), called with a batch
(a dict of column arrays) and returning the batch with its output columns added, one row per input row.
"""
