"""The algorithms mixers share or hide behind their forward, apart from the mixers that use them:
``fft_conv`` (long convolutions by FFT: conv's global kernel, BaseConv's long filter, Hyena's
filters), ``selective_scan`` (Mamba's recurrence, for ssm) and ``chunked_linear_attention``
(linear attention's chunked causal form). Plain PyTorch; nothing here is registered."""
