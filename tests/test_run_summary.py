"""The plain-language end-of-run summary (also what `make demo` ends with)."""
from tff_backdoor.run import summary


def _rows():
  rows = []
  for r in range(6):
    attacked = r >= 2
    rows.append({'round': r, 'num_attackers': int(attacked), 'test_accuracy': 0.5 + 0.05 * r,
                 'backdoor_accuracy': [0.0, 0.1, 1.0, 0.95, 0.2, 0.0][r],
                 'collateral_accuracy': [0.1, 0.1, 0.3, 0.2, 0.1, 0.0][r],
                 'mean_honest_update_norm': 1.0,
                 'mean_malicious_update_norm': 9.0 if attacked else 0.0,
                 'aggregator/clipped_count': 2 if attacked else 0})
  return rows


def test_backdoor_is_summarised_over_the_attack_rounds_only():
  lines = summary.summary_lines(_rows(), {'name': 'clip', 'clip_norm': 3.0}, 'femnist', 7, 1)
  assert lines[0] == 'main accuracy: 0.750 after 6 rounds'
  assert ('over the 4 rounds with an attacker (the attacker\'s 7s labelled 1): mean 0.537, '
          'max 1.000, 50% of them above 0.9; after the last round 0.000') in lines[1]
  assert lines[2].startswith("collateral rate: 0.150 of other writers' test 7s predicted 1")
  assert lines[3] == ('defense: clip; every update cut to norm <= 3; 8 updates clipped over 6 '
                      'rounds; attacker update norm 9.00 on average against 1.00 for honest '
                      'clients')


def test_clean_run_and_config_dict():
  rows = [dict(r, num_attackers=0) for r in _rows()]
  lines = summary.describe_run(rows, {'task': 'targeted', 'dataset': 'fashion_mnist',
                                          'source_class': 7, 'target_class': 1,
                                          'defense': {'name': 'none'}})
  assert lines == ['main accuracy: 0.750 after 6 rounds', 'no round had an attacker',
                   'defense: none']
  assert summary.describe_run([], {}) == []


def test_the_bound_line_follows_the_defense_spec():
  """Every defense whose spec cuts each client update to a norm says so (sun_dp and weak_dp
  as clip); one that clips only the aggregate (clip_mean) or none (median) does not."""
  for name, says in (('sun_dp', True), ('weak_dp', True), ('clip_mean', False),
                     ('median', False)):
    line = summary.summary_lines(_rows(), {'name': name, 'clip_norm': 1.0}, 'femnist', 7, 1)[3]
    assert line.startswith(f'defense: {name}; ')
    assert ('every update cut to norm <= 1;' in line) == says, line


def test_non_finite_updates_and_refused_aggregates_are_said():
  rows = [dict(r, nonfinite_count=2, update_non_finite=int(r['round'] == 5)) for r in _rows()]
  lines = summary.summary_lines(rows, {'name': 'none'}, 'femnist', 7, 1)
  assert lines[-1] == ('12 non-finite client updates left out and 1 non-finite aggregates '
                       'not applied over 6 rounds: the model did not learn from them')
  assert not any('non-finite' in line for line in summary.summary_lines(_rows(), {}))
