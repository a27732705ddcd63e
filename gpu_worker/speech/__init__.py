"""Speech understood by Whisper: the model loaded once per process (``whisper.py``), shared by the speech
features the lips are learnt from and the captions of every render."""
