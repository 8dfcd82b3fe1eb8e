"""Live voice: speech streamed in as it is spoken, prefilled as it arrives (`VoiceSession`)."""
