@< MODELNAME >@
@< query({"database": "data", "flat": "on", "limit": 1, "project": ["a.si-value"],
          "query": {"meta.subject.kimcode": MODELNAME,
                    "meta.runner.kimcode": {"$regex": "AtomscoreLatticeConstantCubic_diamond_Si__TE_000000000001"},
                    "property-id": {"$regex": "structure-cubic-crystal-npt"}}}) >@
