import org.jetbrains.kotlin.gradle.dsl.JvmTarget

// The platform-free library: tokenizer, samplers, manifest reader, pipeline, benchmark result.
// Plain Kotlin/JVM, so it builds and tests on any machine; the app consumes it as a module.
plugins {
    `java-library`
    alias(libs.plugins.kotlin.jvm)
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

kotlin {
    compilerOptions {
        jvmTarget.set(JvmTarget.JVM_17)
        allWarningsAsErrors.set(true)
    }
}

dependencies {
    // org.json is part of the Android platform: compile against Android's implementation, ship none.
    compileOnly(libs.android.json)
    testImplementation(libs.android.json)
    testImplementation(platform(libs.junit.bom))
    testImplementation(libs.junit.jupiter)
    testRuntimeOnly(libs.junit.platform.launcher)
}

tasks.test {
    useJUnitPlatform()
    // The golden vectors and the tokenizer files live in the repository, above android_app/.
    systemProperty("mobilediff.repo", rootDir.parentFile.absolutePath)
}
