"""The tools around the model: the `faceptor` command line, converters, export, Hub push and cards, parameter
tables. None of this travels to the Hub as remote code (`push.REMOTE_CODE_FILES` lists what does), so these
modules may import the whole package; nothing in the model's files imports them."""
