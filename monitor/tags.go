package monitor

import (
	"log/slog"

	"github.com/trireme-go/trireme/identity"
)

// System tag keys set by monitors. Users cannot set them: labels with a
// reserved key (identity.IsReserved) are dropped.
const (
	TagImage = identity.SysPrefix + "image"
	TagName  = identity.SysPrefix + "name"
	TagID    = identity.SysPrefix + "id"
	TagKind  = identity.SysPrefix + "kind"
)

// BuildTags makes a PU identity from user labels and system values. Labels
// identity.CheckLabel refuses are dropped and logged (with the PU id): a reserved
// key ('@...'), so a workload cannot claim a system identity; empty keys,
// keys containing '=' (tags travel as key=value), control characters,
// oversized labels. The control API refuses such labels instead. Empty
// system values (e.g. no image) are left out.
func BuildTags(log *slog.Logger, puID string, labels map[string]string, sys map[string]string) identity.Tags {
	m := make(map[string]string, len(labels)+len(sys))
	for k, v := range labels {
		if err := identity.CheckLabel(k, v, false); err != nil {
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
	return identity.NewTags(m)
}

// SysTags returns the system tags every monitor sets.
func SysTags(kind Kind, id, name, image string) map[string]string {
	return map[string]string{TagKind: kind.String(), TagID: id, TagName: name, TagImage: image}
}
