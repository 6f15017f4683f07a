"""The speech workflow's own parts, registered as a plugin (:mod:`jellybean.speech.plugin`): labelled
audio made here with espeak-ng, and the cloud stage that receives the speech the VAD lets through.
The VAD models themselves are Silero VAD's builds, served as artifacts from the model store."""
