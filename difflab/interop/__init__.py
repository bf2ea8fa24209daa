"""Layer 4: interoperability with other libraries. ``difflab.interop.diffusers`` (the optional extra
``interop``) is imported only on use, so ``import difflab`` never imports diffusers."""
