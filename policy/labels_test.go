package policy

import "github.com/trireme-go/trireme/identity"

// k8sLabels shows tags to apimachinery's matcher (labels.Labels), which asks
// for reserved keys in their encoded form (encodeKey).
type k8sLabels identity.Tags

func (l k8sLabels) Has(key string) bool { return identity.Tags(l).Has(decodeKey(key)) }

func (l k8sLabels) Get(key string) string { return identity.Tags(l).Get(decodeKey(key)) }

func (l k8sLabels) Lookup(key string) (string, bool) {
	return identity.Tags(l).Lookup(decodeKey(key))
}
