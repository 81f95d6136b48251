/**
 * What a ClearML session says about its holder: the claims of the session token (SPEC section 5 step
 * 10) and the identity `authenticate` builds from a credential (SPEC sections 7 and 10). Types and one
 * key name only, so the session service and the token verifier both take them from here.
 */
import type { Role } from '../directory/user-directory.js'

export interface SessionIdentity {
  company: string
  user: string
  user_name: string
  role: Role
  company_name: string
}

export interface SessionClaims {
  auth_type: 'Bearer'
  identity: SessionIdentity
  session_id: string
  sso?: { provider: string, sid?: string }
  iat: number
  exp: number
}

/** Which kind of credential a request presented (SPEC section 10). */
export type CredentialKind = 'session' | 'keycloak'

/**
 * What `authenticate` puts on `request.clearmlIdentity`: the identity, the session id (a Keycloak
 * token's `sid`) and expiry, and which kind of credential it came from.
 */
export interface ClearmlIdentity extends SessionIdentity {
  session_id: string
  exp: number
  credential: CredentialKind
}

/** Revocation key under which a back-channel logout revokes every session of one Keycloak session. */
export function keycloakSessionKey (sid: string): string {
  return `keycloak-sid:${sid}`
}
