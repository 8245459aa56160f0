"""Files: the one writer and reader of every dlsa file (`files`: staging, metadata, checks), the registry of
feature formats with a module per format (`formats`), feature files read and written through it (`features`),
and outputs written batch by batch (`stream`)."""
