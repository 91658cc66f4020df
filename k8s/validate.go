package k8s

import (
	"errors"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/validate/content"
	"k8s.io/apimachinery/pkg/util/validation"
)

func msgs(errs []string) error {
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, "; "))
}

func validateDNSLabel(s string) error { return msgs(content.IsDNS1123Label(s)) }

// validateName checks an object name (pods: DNS subdomain).
func validateName(s string) error { return msgs(content.IsDNS1123Subdomain(s)) }

func validatePortName(s string) error { return msgs(validation.IsValidPortName(s)) }

// validateLabels checks label keys and values (sorted, so the first error
// reported is stable).
func validateLabels(l map[string]string) error {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if errs := content.IsLabelKey(k); len(errs) > 0 {
			return errors.New("label key " + quote(k) + ": " + strings.Join(errs, "; "))
		}
		if errs := content.IsLabelValue(l[k]); len(errs) > 0 {
			return errors.New("label " + quote(k) + " value " + quote(l[k]) + ": " + strings.Join(errs, "; "))
		}
	}
	return nil
}

func quote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"` }
