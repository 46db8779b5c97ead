package kmip

import (
	"context"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipserver"

	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/keystore"
)

// template is what keybroker reads of a Template-Attribute.
type template struct {
	alg    kmip.CryptographicAlgorithm
	length int32
	mask   kmip.CryptographicUsageMask
	names  []string
}

// ignoredAttributes are accepted in a template and not kept: they change
// nothing keybroker does with the object.
var ignoredAttributes = map[kmip.AttributeName]bool{
	kmip.AttributeNameObjectGroup:                    true,
	kmip.AttributeNameContactInformation:             true,
	"Operation Policy Name":                          true, // deprecated in KMIP 1.3, still sent by 1.0-1.2 clients
	kmip.AttributeNameCryptographicParameters:        true,
	kmip.AttributeNameApplicationSpecificInformation: true,
	kmip.AttributeNameDescription:                    true,
	kmip.AttributeNameComment:                        true,
	kmip.AttributeNameSensitive:                      true,
	kmip.AttributeNameExtractable:                    true,
}

// parseTemplate reads a Template-Attribute; an attribute keybroker would
// have to act on but does not is refused by name.
func parseTemplate(t kmip.TemplateAttribute) (template, error) {
	var out template
	//lint:ignore SA1019 KMIP 1.0-1.2 clients send names in the template's Name list
	for _, n := range t.Name {
		out.names = append(out.names, n.NameValue)
	}
	for _, a := range t.Attribute {
		if err := out.set(a); err != nil {
			return template{}, err
		}
	}
	return out, nil
}

func (t *template) set(a kmip.Attribute) error {
	bad := func() error {
		return fail(kmip.ResultReasonInvalidField, "attribute %q has a value of the wrong type", a.AttributeName)
	}
	switch a.AttributeName {
	case kmip.AttributeNameCryptographicAlgorithm:
		v, ok := a.AttributeValue.(kmip.CryptographicAlgorithm)
		if !ok {
			return bad()
		}
		t.alg = v
	case kmip.AttributeNameCryptographicLength:
		v, ok := a.AttributeValue.(int32)
		if !ok {
			return bad()
		}
		t.length = v
	case kmip.AttributeNameCryptographicUsageMask:
		v, ok := a.AttributeValue.(kmip.CryptographicUsageMask)
		if !ok {
			return bad()
		}
		t.mask = v
	case kmip.AttributeNameName:
		v, ok := a.AttributeValue.(kmip.Name)
		if !ok {
			return bad()
		}
		t.names = append(t.names, v.NameValue)
	default:
		if !ignoredAttributes[a.AttributeName] && !a.AttributeName.IsCustom() {
			return fail(kmip.ResultReasonInvalidField, "keybroker does not accept the %q attribute here; it keeps Name, Cryptographic Algorithm, Cryptographic Length and Cryptographic Usage Mask", a.AttributeName)
		}
	}
	return nil
}

// kmipState maps a keystore state to KMIP's.
func kmipState(s keystore.State) kmip.State {
	switch s {
	case keystore.StatePreActive:
		return kmip.StatePreActive
	case keystore.StateActive:
		return kmip.StateActive
	case keystore.StateDeactivated:
		return kmip.StateDeactivated
	case keystore.StateCompromised:
		return kmip.StateCompromised
	case keystore.StateDestroyed:
		return kmip.StateDestroyed
	}
	return kmip.StateDestroyedCompromised
}

// keystoreState maps a KMIP state to the keystore's; ok is false for an
// unknown one.
func keystoreState(s kmip.State) (keystore.State, bool) {
	for _, st := range []keystore.State{keystore.StatePreActive, keystore.StateActive, keystore.StateDeactivated,
		keystore.StateCompromised, keystore.StateDestroyed, keystore.StateDestroyedCompromised} {
		if kmipState(st) == s {
			return st, true
		}
	}
	return "", false
}

func kmipObjectType(t keystore.ObjectType) kmip.ObjectType {
	if t == keystore.ObjectSecretData {
		return kmip.ObjectTypeSecretData
	}
	return kmip.ObjectTypeSymmetricKey
}

// secretDataTypes maps KMIP Secret Data Types to the names the keystore keeps.
var secretDataTypes = map[kmip.SecretDataType]string{
	kmip.SecretDataTypePassword: "PASSWORD",
	kmip.SecretDataTypeSeed:     "SEED",
}

func kmipSecretDataType(s string) kmip.SecretDataType {
	for k, v := range secretDataTypes {
		if v == s {
			return k
		}
	}
	return kmip.SecretDataTypeSeed
}

// setPlaceholder makes id the batch's ID Placeholder for the next items.
func setPlaceholder(ctx context.Context, id string) {
	defer func() { _ = recover() }() // outside a batch (unit tests): nothing to set
	kmipserver.SetIdPlaceholder(ctx, id)
}

// time helpers: KMIP Date-Times have whole seconds.
func kmipTime(t time.Time) time.Time { return t.UTC().Truncate(time.Second) }

// algorithm returns the KMIP algorithm of an object (AES for symmetric keys).
func algorithm(info broker.ObjectInfo) kmip.CryptographicAlgorithm {
	if info.Algorithm == "AES" {
		return kmip.CryptographicAlgorithmAES
	}
	return 0
}
