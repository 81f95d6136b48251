/**
 * The example apiserver against a real Keycloak (see docker-compose.yml next to this file).
 * Everything Keycloak-related comes from the CLEARML__ environment, as in ClearML.
 */
import { buildApiserver, clearmlVariables, seededDirectory } from '../apiserver.js'

const webappUrl = process.env.WEBAPP_URL ?? 'http://localhost:8008'
const app = await buildApiserver({ env: clearmlVariables(process.env), webappUrl, directory: seededDirectory() })
await app.listen({ port: Number(new URL(webappUrl).port || 8008), host: '0.0.0.0' })
