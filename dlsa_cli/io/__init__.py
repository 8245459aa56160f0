"""Files: the one writer and reader of every dlsa file (`files`), and feature files in every format (`features`)."""
