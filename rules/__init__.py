"""One module per rule. Each holds a `harness.core.rule.Rule` subclass; `harness.core.registry.all_rules()`
finds them. Rule ids (GA0xx) are stable and never reused:

GA001 train-before-score      GA002 rescored-tokens        GA003 hash-key-reads-target
GA004 val-data-in-training    GA005 network-at-eval        GA006 packed-source
GA007 incomplete-scoring      GA008 reported-score-mismatch GA009 byte-accounting
GA010 future-dependent-score  GA011 improper-distribution
GA012 submission-layout (CI gate)   GA013 audit-tampering
GA014.. reserved for later rules (allocate the next free id)
"""
