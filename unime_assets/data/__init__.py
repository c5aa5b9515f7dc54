"""Data formats: MMEB readers, official UniME-V2 score files, the synthetic default, images."""
