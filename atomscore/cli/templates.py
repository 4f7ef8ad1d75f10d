"""Spec templates for ``atomscore run --example SCORE``: one runnable JSON spec per score class.

Each template names the files a user replaces (configurations, descriptors, error logs, a
target covariance) and the compute arguments that define the result, in the seed's spec form
(``score.score_type``, ``score_args``, ``compute_args``, ``query_configs_path`` or
``dataset_path``). ``NOTES`` says, per score, what to replace; docs/fim.md walks the FIM chain.
"""

from __future__ import annotations

#: the SW silicon model that openkim-models ships (docs/fim.md)
KIM_MODEL = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
_POTENTIAL = {"potential_type": "KIM", "potential_args": {"kim_id": KIM_MODEL, "species": ["Si"]}}
_PARAMETERS = {"A": [["default"]], "B": [["default"]]}


def _spec(score_type, path_key, path, compute_args, score_args=None, batch_size=1):
    return {"batch_size": batch_size,
            "score": {"score_type": score_type, "path_type": score_type.lower().replace("score", ""),
                      path_key: path, "score_args": score_args or {}, "compute_args": compute_args}}


TEMPLATES = {
    "LTAUForcesUQScore": _spec(
        "LTAUForcesUQScore", "query_configs_path", "configs.xyz",
        {"score_quantity": "UNCERTAINTY", "descriptors_key": "descriptors", "num_nearest_neighbors": 1},
        score_args={"train_descriptors": "train_descriptors.npy", "error_pdfs": "error_logs.npy",
                    "from_error_logs": True, "nbins": 100}, batch_size=50),
    "QUESTSEfficiencyScore": _spec(
        "QUESTSEfficiencyScore", "dataset_path", "dataset.xyz",
        {"score_quantity": "EFFICIENCY", "descriptors_key": "descriptors", "bandwidth": 0.015}),
    "QUESTSDiversityScore": _spec(
        "QUESTSDiversityScore", "dataset_path", "dataset.xyz",
        {"score_quantity": "DIVERSITY", "descriptors_key": "descriptors", "bandwidth": 0.015}),
    "QUESTSDeltaEntropyScore": _spec(
        "QUESTSDeltaEntropyScore", "query_configs_path", "configs.xyz",
        {"score_quantity": "DELTA_ENTROPY", "reference_set": "train_descriptors.npy",
         "descriptors_key": "descriptors", "bandwidth": 0.015}, batch_size=50),
    "FIMTrainingSetScore": _spec(
        "FIMTrainingSetScore", "query_configs_path", "candidates.xyz",
        {"score_quantity": "SENSITIVITY", "potential": _POTENTIAL, "parameters_optimize": _PARAMETERS}),
    "FIMPropertyScore": _spec(
        "FIMPropertyScore", "dataset_path", "target_property.json",
        {"score_quantity": "SENSITIVITY", "potential": _POTENTIAL, "parameters_optimize": _PARAMETERS,
         "cov": "target_cov.npy"}),
    "FIMMatchingScore": _spec(
        "FIMMatchingScore", "query_configs_path", "candidates_fim.xyz",
        {"score_quantity": "IMPORTANCE", "fim_property": "fim_property/score_results.json"}, batch_size=1000),
}

#: what to replace in each template, printed on stderr beside it
NOTES = {
    "LTAUForcesUQScore": "configs.xyz: the configurations to score (descriptors in arrays['descriptors']); "
                         "train_descriptors.npy: (n_train_atoms, dim) descriptors of the training atoms; "
                         "error_logs.npy: (epochs, n_train_atoms) force errors in eV/Å logged during training",
    "QUESTSEfficiencyScore": "dataset.xyz: the dataset with descriptors (atomscore descriptors dataset.xyz -o ...); "
                             "bandwidth: see atomscore bandwidth dataset.xyz",
    "QUESTSDiversityScore": "dataset.xyz: the dataset with descriptors (atomscore descriptors dataset.xyz -o ...); "
                            "bandwidth: see atomscore bandwidth dataset.xyz",
    "QUESTSDeltaEntropyScore": "configs.xyz: the configurations with descriptors; train_descriptors.npy: the "
                               "reference's (n, dim) descriptors, or its configurations file",
    "FIMTrainingSetScore": "candidates.xyz: candidate configurations; potential: any installed KIM model; "
                           "parameters_optimize: its parameters to fit ('default' keeps the model's value; "
                           "add 'fix' to hold one). Writes each configuration's FIM in info; docs/fim.md",
    "FIMPropertyScore": "target_property.json: the target property, e.g. {\"init_args\": {\"target_property_type\": "
                        "\"ElasticConstants\", \"target_property_args\": {\"lattice_param\": 5.43, "
                        "\"lattice_type\": \"diamond\", \"elements\": [\"Si\"]}}}; target_cov.npy: the (N, N) "
                        "covariance of the precision you want (docs/fim.md)",
    "FIMMatchingScore": "candidates_fim.xyz: the FIMTrainingSetScore results (each FIM in info); fim_property: "
                        "the FIMPropertyScore score_results.json (or a (P, P) list); docs/fim.md",
}
