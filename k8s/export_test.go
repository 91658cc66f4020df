package k8s

// For the external tests (package k8s_test: the live tests, which run the
// daemon through testenv, which imports the node, which imports this
// package).
var CasesDir = casesDir

func SortedKeys[V any](m map[string]V) []string { return sortedKeys(m) }
