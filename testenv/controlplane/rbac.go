package controlplane

import (
	"context"
	"errors"
	"fmt"
	"time"

	authv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Access is one question to the API server's authorizer: may a subject do
// Verb on Resource (its Subresource, if set) of API group Group (in
// Namespace; "" is every namespace, or a cluster-scoped resource)?
type Access struct {
	Group, Resource, Subresource, Verb, Namespace string
}

func (a Access) String() string {
	s := a.Verb + " " + a.Resource
	if a.Subresource != "" {
		s += "/" + a.Subresource
	}
	if a.Group != "" {
		s += "." + a.Group
	}
	if a.Namespace != "" {
		s += " in " + a.Namespace
	}
	return s
}

// Subject is who is asked about. A service account is user
// "system:serviceaccount:NS:NAME" in groups "system:serviceaccounts",
// "system:serviceaccounts:NS" and "system:authenticated".
type Subject struct {
	User   string
	Groups []string
}

// GrantTimeout bounds how long CheckAccess asks a grant again.
const GrantTimeout = 30 * time.Second

// grantPoll is the pause between two questions about a grant not yet in force.
const grantPoll = 50 * time.Millisecond

// CheckAccess checks what RBAC lets subject do, with SubjectAccessReviews:
// each of grants must be allowed and each of refusals refused.
//
// The API server's RBAC authorizer reads roles and bindings from an
// informer cache, so a binding just created is in force a moment later: a
// grant is asked again until it is allowed, for up to GrantTimeout in all.
// A refusal is asked once, and only once every grant is in force: before
// that it would be refused whatever the binding says, and prove nothing
// (refusals are checked against the same bindings as the grants; when a
// grant is never in force, the refusals are not asked and the error says
// so). The error names every grant refused and every refusal allowed; an
// API error is returned as it is.
func CheckAccess(ctx context.Context, c kubernetes.Interface, s Subject, grants, refusals []Access) error {
	return checkAccess(ctx, c, s, grants, refusals, GrantTimeout)
}

func checkAccess(ctx context.Context, c kubernetes.Interface, s Subject, grants, refusals []Access, timeout time.Duration) error {
	var errs []error
	pending := grants
	for deadline := time.Now().Add(timeout); ; {
		var still []Access
		for _, a := range pending {
			ok, err := allowed(ctx, c, s, a)
			if err != nil {
				return err
			}
			if !ok {
				still = append(still, a)
			}
		}
		if pending = still; len(pending) == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, a := range pending {
				errs = append(errs, fmt.Errorf("%s may not %s (a grant, asked for %v)", s.User, a, timeout))
			}
			if len(refusals) > 0 {
				errs = append(errs, fmt.Errorf("%d refusals not checked: the grants they are checked against are not in force", len(refusals)))
			}
			return errors.Join(errs...)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(grantPoll):
		}
	}
	for _, a := range refusals {
		ok, err := allowed(ctx, c, s, a)
		if err != nil {
			return err
		}
		if ok {
			errs = append(errs, fmt.Errorf("%s may %s (a refusal)", s.User, a))
		}
	}
	return errors.Join(errs...)
}

// allowed asks the API server whether s may do a (a SubjectAccessReview).
func allowed(ctx context.Context, c kubernetes.Interface, s Subject, a Access) (bool, error) {
	r, err := c.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authv1.SubjectAccessReview{Spec: authv1.SubjectAccessReviewSpec{
		User: s.User, Groups: s.Groups,
		ResourceAttributes: &authv1.ResourceAttributes{Namespace: a.Namespace, Group: a.Group, Resource: a.Resource, Subresource: a.Subresource, Verb: a.Verb},
	}}, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("may %s %s: %w", s.User, a, err)
	}
	return r.Status.Allowed, nil
}
