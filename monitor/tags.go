package monitor

import (
	"log/slog"

	"github.com/trireme-go/trireme/policy"
)

// System tag keys set by monitors. Users cannot set them: labels whose key
// starts with '@' are dropped.
const (
	TagImage = policy.SysPrefix + "image"
	TagName  = policy.SysPrefix + "name"
	TagID    = policy.SysPrefix + "id"
	TagKind  = policy.SysPrefix + "kind"
)

// BuildTags makes a PU identity from user labels and system values. Labels
// CheckLabel refuses are dropped and logged (with the PU id): a reserved
// key ('@...'), so a workload cannot claim a system identity; empty keys,
// keys containing '=' (tags travel as key=value), control characters,
// oversized labels. The control API refuses such labels instead. Empty
// system values (e.g. no image) are left out.
func BuildTags(log *slog.Logger, puID string, labels map[string]string, sys map[string]string) policy.Tags {
	m := make(map[string]string, len(labels)+len(sys))
	for k, v := range labels {
		if err := CheckLabel(k, v, false); err != nil {
			if log != nil {
				log.Warn("dropping label", "pu", puID, "key", k, "why", err)
			}
			continue
		}
		m[k] = v
	}
	for k, v := range sys {
		if v != "" {
			m[k] = v
		}
	}
	return policy.NewTags(m)
}

// SysTags returns the system tags every monitor sets.
func SysTags(kind Kind, id, name, image string) map[string]string {
	return map[string]string{TagKind: kind.String(), TagID: id, TagName: name, TagImage: image}
}
