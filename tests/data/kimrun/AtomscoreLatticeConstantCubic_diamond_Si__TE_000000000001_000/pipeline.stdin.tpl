@< path("AtomscoreLatticeConstantCubic__TD_000000000001_000") >@
@< MODELNAME >@
Si
diamond
5.43
