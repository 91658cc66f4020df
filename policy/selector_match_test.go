package policy

import (
	"sort"

	"github.com/trireme-go/trireme/identity"
	"k8s.io/apimachinery/pkg/labels"
)

// The tests' matchers: the engine compiles selectors into its own
// structures; these evaluate them straight from their requirements (the
// documented semantics) and through apimachinery, to hold the engine and the
// parser to both.

// matchesTags reports whether tags satisfy every requirement of s.
func matchesTags(s *Selector, tags identity.Tags) bool {
	for _, r := range s.reqs {
		if !requirementMatches(r, tags) {
			return false
		}
	}
	return true
}

// requirementMatches reports whether tags satisfy one requirement.
func requirementMatches(r Requirement, tags identity.Tags) bool {
	v, ok := tags.Lookup(r.Key)
	switch r.Op {
	case OpIn:
		return ok && containsString(r.Values, v)
	case OpNotIn:
		return !ok || !containsString(r.Values, v)
	case OpExists:
		return ok
	case OpDoesNotExist:
		return !ok
	}
	return false
}

func containsString(sorted []string, v string) bool {
	i := sort.SearchStrings(sorted, v)
	return i < len(sorted) && sorted[i] == v
}

// k8sSelector is apimachinery's matcher for the requirements of s (over
// encoded reserved keys; identity.Tags decodes them on lookup) when every value is a
// Kubernetes label value, nil otherwise.
func k8sSelector(s *Selector) labels.Selector {
	k := labels.NewSelector()
	for _, r := range s.reqs {
		ek, err := encodeKey(r.Key)
		if err != nil {
			return nil
		}
		lr, err := labels.NewRequirement(ek, labelOps[r.Op], r.Values)
		if err != nil { // a value that is no label value
			return nil
		}
		k = k.Add(*lr)
	}
	return k
}
